"""HTTP routers, one per concern; each route only translates HTTP ↔ domain calls."""
