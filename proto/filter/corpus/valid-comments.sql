/* block */ a = 1 -- line
AND b = 2 /* tail */