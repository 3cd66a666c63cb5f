"""What a generation gives back and how it is written: result types, file formats, embedded parameters, videos,
grids."""
