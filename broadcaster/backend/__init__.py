"""Redis: the one client configuration (redis_client), the embedded development server
(embedded_redis), and whether Redis answers as this process sees it (outage)."""
