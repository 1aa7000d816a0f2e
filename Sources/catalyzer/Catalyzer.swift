import ArgumentParser
import CatalyzerImage

@main
struct Catalyzer: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "catalyzer",
        abstract: "Serverless sandboxes that start from checkpoint images.",
        version: CatalyzerVersion.current,
        subcommands: [ImageCommand.self, BenchCommand.self, Run.self, CheckpointCommand.self, InvokeCommand.self, MountCommand.self,
                      PushCommand.self, PullCommand.self, ServeCommand.self, FunctionCommand.self]
    )
}
