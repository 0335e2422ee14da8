"""pndm.train: DDPM eps-prediction training (the objective of the DDIM/PNDM repos)."""
