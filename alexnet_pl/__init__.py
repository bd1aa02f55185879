"""AlexNet (Krizhevsky, Sutskever & Hinton, 2012) with PyTorch Lightning and Hydra."""
