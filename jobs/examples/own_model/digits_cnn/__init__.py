"""An example of bringing your own model: a small CNN on scikit-learn's digits images, submitted like any job."""
