/// The version recorded in images (`creator`) and printed by `catalyzer --version`.
public enum CatalyzerVersion {
    public static let current = "0.2.0"
}
