package cluster

import "syscall"

// sysProcAttr puts a node in its own process group, so that the Ctrl-C a
// terminal sends to sluice-local's group does not stop the nodes before
// the services (sluice-local stops them last), and makes the kernel kill
// the node when the process that started it dies, so a test binary that
// panics or times out leaves no server behind.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}
