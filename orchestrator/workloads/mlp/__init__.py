"""MLP classifier on scikit-learn's bundled 8x8 digits data set."""
