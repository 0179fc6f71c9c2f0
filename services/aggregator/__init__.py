"""The aggregator: a Flower ServerApp running FedAvg and recording every round."""
