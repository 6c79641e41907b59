// hiredis 0.14 (Debian's libhiredis-dev): only the command formatter and the reply reader are used;
// SwiftNIO owns the socket. Declared without pkgConfig: its -D_FILE_OFFSET_BITS=64 is refused by SwiftPM.
#include <hiredis/hiredis.h>
