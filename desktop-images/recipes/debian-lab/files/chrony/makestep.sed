# LabDesk: step the clock whenever it is more than 1 s off, not only in the first updates after boot:
# after a resume the clock can be minutes behind, and slewing that away would take hours.
s/^makestep .*/makestep 1 -1/
