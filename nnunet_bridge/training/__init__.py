"""The pieces of the zoo trainer, each overriding one concern of nnU-Net's trainer."""
