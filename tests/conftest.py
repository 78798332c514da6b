pytest_plugins = ["tests.s3server", "tests.disk_s3", "tests.mlflowserver", "tests.embedded_clusters"]
