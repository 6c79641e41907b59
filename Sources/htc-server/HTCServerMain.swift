import HTCServer

@main
struct HTCServerMain {
    static func main() async {
        await ServerCommand.main()
    }
}
