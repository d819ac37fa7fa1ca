"""System settings editable by Admins, and sign-in throttling of the console."""
