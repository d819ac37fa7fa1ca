"""System settings editable by Admins."""
