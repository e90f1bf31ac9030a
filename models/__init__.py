"""What a generator is: preconditioning, UNets, the one-step generator, the bundle, teacher loaders."""

PROJECT = 'sida'
