package test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// TestKeyPasswordsNeverPrinted puts a password into registry keys of every
// shape — in the source Secret, and as foreign keys in the node's files
// (some of which the Secret displaces and cleanup restores) — and runs the
// real binary through everything that prints a key: the agent at debug
// level (invalid Secret, displaced, restored, a corrupt target naming its
// bad entry), its Events, the Node's condition and annotations, /metrics,
// `sync --once`'s exit message, `check` (table and JSON, --probe against a
// registry on 127.0.0.1 that refuses the entry), `status`, `cleanup` and
// `credential-provider` (answer and error). No piece of the password of
// testsupport.LeakMin characters may show up in any of them.
func TestKeyPasswordsNeverPrinted(t *testing.T) {
	const (
		canary = "Zq7xW9vT2kLp" // shares no 4 characters with any other output
		reg    = "registry.example.com"
		node   = "node-redact"
		third  = "/srv/creds/config.json"
	)
	c := startCluster(t)
	ctx := t.Context()
	applyManifest(t, c)
	admin := c.Admin
	createNode(t, admin, node)
	kubeconfig, _, _, err := c.AgentKubeconfig(ctx, ns, "nodecreds", node)
	if err != nil {
		t.Fatal(err)
	}
	refusing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	defer refusing.Close()
	local := strings.TrimPrefix(refusing.URL, "http://")

	// The node's files before nodecreds: foreign keys of every shape. Some
	// ("https://robot:<password>@registry.example.com/v1/") name the
	// Secret's registry to the kubelet, which drops their user-info, so the
	// Secret displaces them and cleanup puts them back.
	shapes := testsupport.UserInfoKeys(canary)
	foreign := map[string]any{"https://robot:" + canary + "@" + local: map[string]string{"auth": testsupport.B64("robot:foreign-pw")}}
	for _, k := range shapes {
		foreign[k] = map[string]string{"auth": testsupport.B64("robot:foreign-pw")}
	}
	root := t.TempDir()
	nodeFile := func(path string, auths map[string]any) {
		t.Helper()
		b, err := json.Marshal(map[string]any{"auths": auths})
		if err != nil {
			t.Fatal(err)
		}
		writeNodeFile(t, filepath.Join(root, path), string(b))
	}
	nodeFile(kubeletFile, foreign)
	nodeFile(dockerFile, foreign)
	nodeFile(third, map[string]any{"robot:" + canary + "@r.test": "not an object"})
	nodeFile("config.json", map[string]any{"https://robot:" + canary + "@" + reg: map[string]string{"auth": "%%%"}})

	// The source Secret, first valid.
	valid := func(regs ...string) []byte {
		creds := map[string]string{"other.example.com": "robot:secret-pw"}
		for _, r := range regs {
			creds[r] = "robot:secret-pw"
		}
		return dockerconfigjson(t, creds)
	}
	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, registrySecret(valid(reg)), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	addr := testsupport.FreeAddr(t)
	targets := strings.Join([]string{"/" + kubeletFile, "/" + dockerFile, third}, ",")
	agent := startAgent(t, "--kubeconfig", kubeconfig, "--namespace", ns, "--node-name", node, "--host-root", root,
		"--metrics-addr", addr, "--log-level", "debug", "--log-format", "text", "--target", targets)
	kubelet := filepath.Join(root, kubeletFile)
	displacedKey := "https://robot:" + canary + "@" + reg + "/v1/"
	testsupport.Eventually(t, 30*time.Second, "first sync, the foreign keys for the Secret's registry displaced", func() bool {
		return authIn(kubelet, reg) == testsupport.B64("robot:secret-pw") && !strings.Contains(string(testsupport.ReadFile(t, kubelet)), displacedKey)
	})

	// Every shape as a key of the Secret: refused, reported on the Node.
	bad := map[string]any{}
	for _, k := range shapes {
		bad[k] = map[string]string{"auth": testsupport.B64("robot:secret-pw")}
	}
	badDoc, err := json.Marshal(map[string]any{"auths": bad})
	if err != nil {
		t.Fatal(err)
	}
	updateSecret(t, admin, badDoc)
	testsupport.Eventually(t, 15*time.Second, "condition False: SourceInvalid", func() bool {
		cond := condition(getNode(t, admin, node))
		return cond != nil && cond.Reason == "SourceInvalid" && strings.Contains(cond.Message, "<redacted>")
	})
	// The same through `sync --once`, on a copy of the node: its exit
	// message and its log.
	once := t.TempDir()
	if err := exec.Command("cp", "-a", root+"/.", once).Run(); err != nil {
		t.Fatal(err)
	}
	onceOut, onceErr, code := run(t, "sync", "--once", "--kubeconfig", kubeconfig, "--namespace", ns, "--host-root", once,
		"--metrics-addr", "0", "--log-level", "debug", "--target", targets)
	if code != 1 || !strings.Contains(onceErr, "user-info") {
		t.Errorf("sync --once on the bad Secret: exit %d, want 1 and the reason:\n%s", code, onceErr)
	}

	// Valid again, then without the registry: the displaced keys come back
	// (logged as restored); with it again they are displaced again.
	updateSecret(t, admin, valid(reg))
	testsupport.Eventually(t, 15*time.Second, "valid Secret applied again", func() bool {
		cond := condition(getNode(t, admin, node))
		return cond != nil && cond.Status == corev1.ConditionTrue
	})
	updateSecret(t, admin, valid())
	testsupport.Eventually(t, 15*time.Second, "displaced keys restored", func() bool {
		return strings.Contains(string(testsupport.ReadFile(t, kubelet)), jsonEscaped(displacedKey))
	})
	updateSecret(t, admin, valid(reg))
	testsupport.Eventually(t, 15*time.Second, "displaced again", func() bool {
		return authIn(kubelet, reg) == testsupport.B64("robot:secret-pw") && !strings.Contains(string(testsupport.ReadFile(t, kubelet)), jsonEscaped(displacedKey))
	})

	var outputs strings.Builder
	say := func(what, text string) { fmt.Fprintf(&outputs, "\n== %s\n%s\n", what, text) }
	say("sync --once", onceOut+onceErr)
	say("metrics", httpBody(t, "http://"+addr+"/metrics"))
	n := getNode(t, admin, node)
	say("annotations", fmt.Sprint(n.Annotations))
	for _, cnd := range n.Status.Conditions {
		say("condition", cnd.Reason+" "+cnd.Message)
	}
	events, err := admin.CoreV1().Events("").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range events.Items {
		say("event", e.Reason+" "+e.Message)
	}
	for _, o := range []string{"table", "json"} {
		out, errs, _ := run(t, "status", "--kubeconfig", c.Kubeconfig, "--namespace", ns, "-o", o, "--log-level", "debug")
		say("status -o "+o, out+errs)
	}
	images := []string{"--image", reg + "/team/app:v1", "--image", local + "/app", "--registry", reg, "--registry", "robot"}
	for _, o := range []string{"table", "json"} {
		out, errs, _ := run(t, append([]string{"check", "--host-root", root, "-o", o, "--log-level", "debug"}, images...)...)
		say("check -o "+o, out+errs)
		out, errs, _ = run(t, "check", "--host-root", root, "-o", o, "--image", local+"/app", "--probe", "--timeout", "5s")
		say("check --probe -o "+o, out+errs)
		if !strings.Contains(out, "redacted") {
			t.Errorf("check --probe -o %s does not name the refused entry:\n%s", o, out)
		}
	}
	// The plugin's answer (which carries the entries' passwords, for the
	// kubelet, but never a key's) and its error naming an entry it cannot
	// decode.
	for _, file := range []string{"/" + kubeletFile, "/config.json"} {
		cmd := exec.Command(binary, "credential-provider", "--host-root", root, "--file", file)
		cmd.Stdin = strings.NewReader(`{"apiVersion":"credentialprovider.kubelet.k8s.io/v1","kind":"CredentialProviderRequest","image":"` + reg + `/team/app"}`)
		var out, errb strings.Builder
		cmd.Stdout, cmd.Stderr = &out, &errb
		_ = cmd.Run()
		say("credential-provider --file "+file, out.String()+errb.String())
		if file == "/config.json" && !strings.Contains(errb.String(), "<redacted>") {
			t.Errorf("the plugin's error does not name the entry it cannot decode: %s", errb.String())
		}
	}

	if code := agent.stop(t); code != 0 {
		t.Errorf("agent exit %d after SIGTERM", code)
	}
	cleanupOut, cleanupErr, code := run(t, "cleanup", "--host-root", root, "--log-level", "debug", "--log-format", "text")
	if code != 0 || !strings.Contains(cleanupErr, "restored") {
		t.Errorf("cleanup: exit %d, want 0 and the restored keys named:\n%s%s", code, cleanupOut, cleanupErr)
	}
	if !strings.Contains(string(testsupport.ReadFile(t, kubelet)), jsonEscaped(displacedKey)) {
		t.Error("cleanup did not restore the displaced keys")
	}
	say("cleanup", cleanupOut+cleanupErr)
	logs := agent.logs.String()
	say("agent log", logs)
	for _, want := range []string{"displaced foreign entries", "restored displaced entries", "source unusable", "replaced", "<redacted>"} {
		if !strings.Contains(logs, want) {
			t.Errorf("the agent log never says %q", want)
		}
	}

	all := outputs.String()
	for _, section := range strings.Split(all, "\n== ") {
		if leak := testsupport.Leak(section, canary); leak != "" {
			t.Errorf("%q of a password in a key is printed here:\n%s", leak, section)
		}
	}
}

// jsonEscaped is s as encoding/json writes it inside a string.
func jsonEscaped(s string) string {
	b, _ := json.Marshal(s)
	return strings.Trim(string(b), `"`)
}
