import ArgumentParser
import CatalyzerKernel

/// `--net-allow` and `--dns`: where a sandbox may connect beyond itself. Without them it may
/// connect nowhere but its own loopback.
struct NetworkOptions: ParsableArguments {
    @Option(name: .customLong("net-allow"), help: ArgumentHelp(
        "Let the sandbox connect to HOST[:PORT], ADDR[/PREFIX][:PORT] or [IPV6[/PREFIX]]:PORT; repeatable. `any` opens every public address (never the host's loopback, link-local or private ranges, which only a rule naming them opens).",
        valueName: "rule"))
    var allow: [String] = []

    @Option(help: ArgumentHelp("The DNS resolver the sandbox's /etc/resolv.conf names, ADDR[:PORT] (port 53 by default); its traffic needs a --net-allow rule like any other.",
                               valueName: "address"))
    var dns: String?

    var isGiven: Bool { !allow.isEmpty || dns != nil }

    /// The policy, or a ValidationError naming the rule that does not parse.
    func policy() throws -> NetworkPolicy {
        do {
            return try NetworkPolicy(allowing: allow, resolver: dns)
        } catch {
            throw ValidationError(error.description)
        }
    }
}
