"""The Explainer gRPC service: class activation maps, rendered and stored."""
