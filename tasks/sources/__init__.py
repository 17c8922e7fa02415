"""Where texts come from: files of every format, web pages (fetch), search backends, and
instruction sets for the generators that start from one."""
