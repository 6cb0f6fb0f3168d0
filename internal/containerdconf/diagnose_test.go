package containerdconf

import (
	"strings"
	"testing"
)

func TestDiagnose(t *testing.T) {
	const certs = "/etc/containerd/certs.d"
	v16, v20, v21 := Version{1, 6, 20}, Version{2, 0, 5}, Version{2, 1, 0}
	single := Config{Path: mainPath, Version: 2, Files: []string{mainPath}, ConfigPaths: []string{certs}, ConfigPathSet: true}
	unset2 := Config{Path: mainPath, Version: 2, Files: []string{mainPath}}
	unset3 := Config{Path: mainPath, Version: 3, Files: []string{mainPath}}
	multi := Config{Path: mainPath, Version: 3, Files: []string{mainPath}, ConfigPaths: []string{certs, "/etc/docker/certs.d"}, ConfigPathSet: true}
	multiLocal := multi
	multiLocal.LocalPull, multiLocal.LocalPullBecause = true, "use_local_image_pull = true"
	other := single
	other.ConfigPaths = []string{"/etc/other/certs.d"}
	legacy := unset2
	legacy.LegacyRegistry, legacy.LocalPull = true, true
	tests := []struct {
		name  string
		c     Config
		v     Version
		known bool
		want  []string // Reason, then text the Fix holds
	}{
		{"one folder, the one written: fine on every release", single, v21, true, nil},
		{"one folder, version unknown: nothing depends on it", single, Version{}, false, nil},
		{"trailing slash is the same folder", Config{Path: mainPath, Version: 2, Files: []string{mainPath}, ConfigPaths: []string{certs + "/"}, ConfigPathSet: true}, v16, true, nil},
		{"1.x without config_path reads no hosts.toml", unset2, v16, true,
			[]string{ReasonConfigPathUnset, `config_path = "/etc/containerd/certs.d" under [plugins."io.containerd.grpc.v1.cri".registry] in /etc/containerd/config.toml`}},
		{"1.x, version 1 file", Config{Path: mainPath, Files: []string{mainPath}}, v16, true,
			[]string{ReasonConfigPathUnset, `under [plugins.cri.registry]`}},
		{"1.x, no file at all", Config{Path: mainPath}, v16, true,
			[]string{ReasonConfigPathUnset, `version = 2 and [plugins."io.containerd.grpc.v1.cri".registry]`}},
		{"2.0 default (two folders, local pull) holds the folder", unset3, v20, true, nil},
		{"2.1 default: two folders with the transfer service (#12808)", unset3, v21, true,
			[]string{ReasonConfigPathMultipleFolders, `config_path = "/etc/containerd/certs.d" under [plugins."io.containerd.cri.v1.images".registry]`, "use_local_image_pull = true"}},
		{"2.2 explicit two folders", multi, Version{2, 2, 1}, true,
			[]string{ReasonConfigPathMultipleFolders, "use_local_image_pull = true"}},
		{"2.2 two folders with the local pull: fine", multiLocal, Version{2, 2, 1}, true, nil},
		{"2.x no file", Config{Path: mainPath}, v21, true,
			[]string{ReasonConfigPathMultipleFolders, `version = 3 and [plugins."io.containerd.cri.v1.images".registry]`}},
		{"another folder", other, v16, true,
			[]string{ReasonConfigPathElsewhere, "--containerd-certs-dir /etc/other/certs.d"}},
		{"2.1 default without the folder written", unset3, v21, true,
			[]string{ReasonConfigPathMultipleFolders, "use_local_image_pull", ReasonConfigPathElsewhere, `config_path = "/srv/certs.d"`}},
		{"legacy inline registry", legacy, v21, true,
			[]string{ReasonLegacyRegistryConfig, "remove registry.mirrors"}},
		{"legacy inline registry, version unknown", legacy, Version{}, false,
			[]string{ReasonLegacyRegistryConfig}},
		{"unset, version unknown: not guessed", unset2, Version{}, false,
			[]string{ReasonRuntimeVersionUnknown, `config_path = "/etc/containerd/certs.d" (one folder`}},
		{"two folders, version unknown: not guessed", multi, Version{}, false,
			[]string{ReasonRuntimeVersionUnknown}},
		{"two folders, 1.6: read one after the other", multi, v16, true, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := certs
			if strings.Contains(tt.name, "without the folder written") {
				dir = "/srv/certs.d"
			}
			got := Diagnose(tt.c, tt.v, tt.known, dir)
			var reasons, wantReasons []string
			for _, p := range got {
				reasons = append(reasons, p.Reason)
				if p.Message == "" || p.Fix == "" || strings.Count(p.Message, ". ") > 0 {
					t.Errorf("problem %+v: want one sentence of message and a fix", p)
				}
			}
			for _, w := range tt.want {
				if !strings.Contains(w, " ") && w != "" && w[0] >= 'A' && w[0] <= 'Z' {
					wantReasons = append(wantReasons, w)
					continue
				}
				if !anyFix(got, w) {
					t.Errorf("no fix holds %q in %+v", w, got)
				}
			}
			if strings.Join(reasons, ",") != strings.Join(wantReasons, ",") {
				t.Fatalf("reasons = %v, want %v (%+v)", reasons, wantReasons, got)
			}
		})
	}
}

func anyFix(ps []Problem, s string) bool {
	for _, p := range ps {
		if strings.Contains(p.Fix, s) {
			return true
		}
	}
	return false
}

func TestChallengeProblem(t *testing.T) {
	tests := []struct {
		scheme string
		v      Version
		known  bool
		want   string
	}{
		{"basic", Version{1, 6, 20}, true, ""},
		{"Basic", Version{}, false, ""},
		{"", Version{1, 6, 20}, true, ""},
		{"bearer", Version{1, 6, 20}, true, ReasonBearerNeedsContainerd21},
		{"bearer", Version{2, 0, 9}, true, ReasonBearerNeedsContainerd21},
		{"Bearer", Version{2, 1, 0}, true, ""},
		{"bearer", Version{3, 0, 0}, true, ""},
		{"bearer", Version{}, false, ReasonRuntimeVersionUnknown},
		{"negotiate", Version{2, 4, 2}, true, ReasonChallengeNotBasic},
		{"other", Version{}, false, ReasonChallengeNotBasic},
	}
	for _, tt := range tests {
		p := ChallengeProblem("reg.test", tt.scheme, tt.v, tt.known)
		got := ""
		if p != nil {
			got = p.Reason
			if !strings.Contains(p.Message, "reg.test") || p.Fix == "" {
				t.Errorf("ChallengeProblem(%q, %v) = %+v: want the registry named and a fix", tt.scheme, tt.v, p)
			}
		}
		if got != tt.want {
			t.Errorf("ChallengeProblem(%q, %v, %v) = %q, want %q", tt.scheme, tt.v, tt.known, got, tt.want)
		}
	}
}
