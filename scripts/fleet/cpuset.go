package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// cpusetRoots are where the cpuset controller is mounted: cgroup v1's own
// hierarchy, or the unified v2 one.
var cpusetRoots = []string{"/sys/fs/cgroup/cpuset", "/sys/fs/cgroup"}

// pin puts the processes pids (every thread of each) into the cpuset
// cgroup name, limited to cpu. It returns what moves them back to the root
// cgroup and removes name.
func pin(name string, cpu int, pids ...int) (func(), error) {
	root, v2, err := cpusetRoot()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("cpuset %s: %w", dir, err)
	}
	settings := [][2]string{{"cpuset.cpus", strconv.Itoa(cpu)}}
	if !v2 {
		settings = append(settings, [2]string{"cpuset.mems", "0"}) // v1 needs both before a task joins
	}
	for _, s := range settings {
		if err := os.WriteFile(filepath.Join(dir, s[0]), []byte(s[1]), 0o644); err != nil {
			return nil, fmt.Errorf("cpuset %s: %s: %w", dir, s[0], err)
		}
	}
	for _, pid := range pids {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return nil, fmt.Errorf("cpuset %s: moving process %d: %w", dir, pid, err)
		}
	}
	return func() {
		b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
		for _, p := range strings.Fields(string(b)) {
			_ = os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(p), 0o644)
		}
		_ = os.Remove(dir)
	}, nil
}

// cpusetRoot finds the cpuset controller: v1's hierarchy, or v2 with the
// controller enabled for children (it is enabled here when available).
func cpusetRoot() (root string, v2 bool, err error) {
	if _, err := os.Stat(filepath.Join(cpusetRoots[0], "cpuset.cpus")); err == nil {
		return cpusetRoots[0], false, nil
	}
	b, err := os.ReadFile(filepath.Join(cpusetRoots[1], "cgroup.controllers"))
	if err != nil || !strings.Contains(string(b), "cpuset") {
		return "", false, errors.New("no cpuset cgroup controller (cgroup v1 cpuset or v2 with cpuset): run with -pin=false, and the fleet shares the API server's CPUs")
	}
	ctl := filepath.Join(cpusetRoots[1], "cgroup.subtree_control")
	if err := os.WriteFile(ctl, []byte("+cpuset"), 0o644); err != nil {
		return "", false, fmt.Errorf("enabling the cpuset controller in %s: %w", ctl, err)
	}
	return cpusetRoots[1], true, nil
}
