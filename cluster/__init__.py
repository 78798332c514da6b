"""Where jobs run: the embedded local Ray cluster, or an existing cluster by address.

Ready-to-use configs for GPU clusters (KubeRay, Ray cluster launcher) live beside this package.
"""
