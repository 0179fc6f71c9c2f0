"""FedXAI: federated learning on Flower with explanations computed by a gRPC Explainer."""

__version__ = "0.1.0"
