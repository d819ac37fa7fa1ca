"""Notifications: email and webhook channels, rules over domain events, and the delivery log."""
