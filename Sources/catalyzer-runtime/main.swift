import ArgumentParser
import Foundation

// runc's global flags come before the command; they are taken here, the rest is the command's.
var globals = RuntimeGlobals()
var arguments = Array(CommandLine.arguments.dropFirst())
do {
    arguments = try globals.take(from: arguments)
} catch {
    RuntimeLog.fail(String(describing: error), globals: globals)
}
RuntimeGlobals.current = globals
RuntimeCommand.main(arguments)
