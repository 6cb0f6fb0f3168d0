package containerdconf

import (
	"fmt"
	"strconv"
	"strings"
)

// Version is a runtime's release.
type Version struct{ Major, Minor, Patch int }

// String is "1.6.20".
func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// AtLeast reports whether v is major.minor or later.
func (v Version) AtLeast(major, minor int) bool {
	return v.Major > major || v.Major == major && v.Minor >= minor
}

// RuntimeVersion splits a Node's status.nodeInfo.containerRuntimeVersion
// ("containerd://1.6.20", "containerd://v2.2.1", "cri-o://1.31.0") into the
// runtime's name and its release. ok is false when no release can be read;
// what follows major.minor.patch (a distribution's "~ds1", "-k3s1", a
// pre-release) is ignored, and a missing patch is 0.
func RuntimeVersion(containerRuntimeVersion string) (runtime string, v Version, ok bool) {
	runtime, rest, found := strings.Cut(strings.TrimSpace(containerRuntimeVersion), "://")
	if !found {
		return "", Version{}, false
	}
	rest = strings.TrimPrefix(rest, "v")
	var nums [3]int
	for i := range nums {
		j := 0
		for j < len(rest) && rest[j] >= '0' && rest[j] <= '9' {
			j++
		}
		if j == 0 || j > 6 {
			if i < 2 {
				return runtime, Version{}, false
			}
			break // "1.7" or "1.7-rc": patch 0
		}
		nums[i], _ = strconv.Atoi(rest[:j])
		rest = rest[j:]
		if i < 2 {
			if !strings.HasPrefix(rest, ".") {
				if i == 0 {
					return runtime, Version{}, false
				}
				break
			}
			rest = rest[1:]
		}
	}
	return runtime, Version{Major: nums[0], Minor: nums[1], Patch: nums[2]}, true
}

// DefaultSandboxRepository is the repository of containerd's sandbox
// image when the configuration names none; the tag depends on the release
// (pause:3.6 in 1.6.20, pause:3.10.2 in 2.4.2), the registry does not.
const DefaultSandboxRepository = "registry.k8s.io/pause"
