"""Remote sessions (SFTP, FTP, FTPS) with one interface for the transfer steps."""
