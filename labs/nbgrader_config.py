"""nbgrader configuration of the course's graded labs (nbgrader 0.9; offline, sqlite gradebook).

``scripts/labs.py`` (``make labs``, ``make grade-lab``, ``make grade-labs``) loads this file and puts
the course root in build/ or a temporary folder; running ``nbgrader`` by hand from ``labs/`` works
too (its outputs -- release/, submitted/, autograded/, feedback/, gradebook.db -- are gitignored).
"""
c = get_config()  # noqa: F821 -- provided by traitlets when it loads this file

c.CourseDirectory.course_id = "modelos-multimodales"
c.CourseDirectory.root = "."

# A cell that runs longer is interrupted and its test fails; the rest of the notebook still runs.
# (nbgrader's default is 30 s; the heavy cells of the labs skip themselves while grading.)
c.Execute.timeout = 60
c.Execute.interrupt_on_timeout = True
# After a cell's reply, wait this long for its last outputs (nbclient's 4 s fails on a busy machine).
c.Execute.iopub_timeout = 30

# A submission that deleted test cells is graded with them put back.
c.OverwriteCells.add_missing_cells = True

# What the student sees in place of a solution.
c.ClearSolutions.code_stub = {"python": "# COMPLETÁ ACÁ\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "COMPLETÁ ACÁ"
