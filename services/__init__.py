"""The FedXAI services: explainer, trainer and aggregator."""
