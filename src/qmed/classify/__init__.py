"""Classification: data, training, evaluation and figures; SimCLR pretraining; DDPM synthesis of the minority class."""
