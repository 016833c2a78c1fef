"""The operator side: the one publish path (publish) and its callers: the console command's
loop (console), the publish API (api, rate-limited by ratelimit) and the operator page."""
