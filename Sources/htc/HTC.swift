import HTCCore

@main
struct HTCMain {
    static func main() async {
        await HTCCommand.main()
    }
}
