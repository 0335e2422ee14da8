"""pndm.train: DDPM eps- (or v-) prediction training (the objective of the DDIM/PNDM repos)."""
