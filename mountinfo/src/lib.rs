//! Parsing /proc/self/mountinfo: the one reader of the mount table for the driver, the volume manager and the tests.
