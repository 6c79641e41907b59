import HTCCore

@main
struct HTCAgentMain {
    static func main() async {
        await AgentCommand.main()
    }
}
