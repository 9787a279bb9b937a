"""Classification (SPEC Q1-Q3), one module per step: data (class folders, .npz, splits, synthetic
images), train, checkpoint, predict, evaluate (metrics: `qmed.evaluate.classification`), figures,
compare; SimCLR pretraining (pretrain) and DDPM synthesis of the minority class (synthesize).
Settings: `qmed.config.ClassifyConfig`, `SimCLRConfig`, `DDPMConfig`."""
