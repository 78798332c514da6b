pytest_plugins = ["tests.s3server", "tests.mlflowserver"]
