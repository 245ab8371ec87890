"""Running the desk: the supervisor of `omni up`, the embedded Redis, the HTTP server (/metrics, /health, /kill), health, Prometheus metrics, alerts, start-up checks."""
