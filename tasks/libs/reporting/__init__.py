"""Reports: the check record every suite fills (records), the files and terminal views it becomes
(writers), and the number, size, table and time formats every report shares (formats)."""
