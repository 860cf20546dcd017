"""io: records in and out. Readers (formats, streaming, errors naming file, line and field), records (which fields
hold the three texts), Python containers, writers (the output formats) and the curation report page."""
