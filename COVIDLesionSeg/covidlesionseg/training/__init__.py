"""Training the lung-and-lesion network: cases (generated, real with painted lesions, datasets), the trainer."""
