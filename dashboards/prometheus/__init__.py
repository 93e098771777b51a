"""Live dashboards on the admitters' and the pipeline's Prometheus metrics."""
