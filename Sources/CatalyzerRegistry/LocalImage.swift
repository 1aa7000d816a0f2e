import CatalyzerImage

extension Registry {
    /// The image of this store that `reference` names, if one was pulled from it: the image named
    /// `reference.defaultImageName` whose recorded origin is the same registry and repository
    /// (and, for a digest reference, that digest). A tag once pulled is not asked for again, as
    /// `docker run` does not: `catalyzer pull` refreshes it.
    public static func pulledImage(_ reference: ImageReference, store: ImageStore) -> String? {
        let name = reference.defaultImageName
        guard let image = try? store.open(name),
              let originText = image.manifestDescriptor.annotations?[ImageStore.originAnnotation],
              let origin = try? ImageReference(parsing: originText),
              origin.registry == reference.registry, origin.repository == reference.repository else { return nil }
        if case let .digest(wanted) = reference.reference, origin.reference != .digest(wanted) { return nil }
        return name
    }
}
