"""Partner connections (SFTP, FTP, FTPS) and their known host keys."""
