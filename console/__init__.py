"""The operator console's own pages (the dashboard index), above every domain app.

Domain apps (jobs, connections, keystore, monitors, audit, tags, system) never import
this package; it reads them all to draw the console's overview.
"""
