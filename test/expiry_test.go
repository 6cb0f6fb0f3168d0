package test

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/nodecreds/nodecreds/internal/testsupport"
)

// ecrEndpoint is the key external-secrets' ECR generator writes: its
// proxy_endpoint, scheme included.
const ecrEndpoint = "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com"

// ecrSecret is a Secret shaped exactly as an ExternalSecret templating
// external-secrets' ECRAuthorizationToken generator writes it: a
// kubernetes.io/dockerconfigjson whose only key is the proxy_endpoint,
// user AWS, with the expiry converted to RFC 3339 in the annotation.
func ecrSecret(t *testing.T, token string, expiresAt time.Time) *corev1.Secret {
	t.Helper()
	doc, err := json.Marshal(map[string]any{"auths": map[string]any{ecrEndpoint: map[string]string{
		"username": "AWS", "password": token, "auth": testsupport.B64("AWS:" + token)}}})
	if err != nil {
		t.Fatal(err)
	}
	s := registrySecret(doc)
	s.Annotations = map[string]string{"nodecreds.io/expires-at": expiresAt.UTC().Format(time.RFC3339)}
	return s
}

// rotateECR replaces the Secret's token and expiry, as the generator's
// refresh does.
func rotateECR(ctx context.Context, client kubernetes.Interface, s *corev1.Secret) error {
	cur, err := client.CoreV1().Secrets(ns).Get(ctx, secretName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	cur.Data, cur.Annotations = s.Data, s.Annotations
	_, err = client.CoreV1().Secrets(ns).Update(ctx, cur, metav1.UpdateOptions{})
	return err
}

// TestExpiryOfRotatedECRToken: a real agent on a real API server follows a
// Secret shaped like external-secrets' ECR generator output, rotated every
// two seconds with an expiry ten seconds ahead (a short simulated
// lifetime, with --expiry-warn-share 0.5 --expiry-warn-min 1s). While the
// rotations come the condition stays Synced; when they stop it turns
// CredentialsExpiring (True, `status --wait` passes) and then
// CredentialsExpired (False, `status --wait` fails naming it) with no
// Secret change; a rotation with a later expiry brings Synced back at
// once. The metrics say the expiry and lifetime, and no log, Event,
// condition, metric or status output holds a token.
func TestExpiryOfRotatedECRToken(t *testing.T) {
	c := startCluster(t)
	ctx := t.Context()
	applyManifest(t, c)
	admin := c.Admin
	const lifetime = 10 * time.Second
	var (
		mu     sync.Mutex
		tokens []string
		last   *corev1.Secret
	)
	next := func(ahead time.Duration) *corev1.Secret {
		mu.Lock()
		defer mu.Unlock()
		token := fmt.Sprintf("ecr-canary-token-%d-%d", len(tokens), time.Now().UnixNano())
		tokens = append(tokens, token)
		last = ecrSecret(t, token, time.Now().Add(ahead))
		return last
	}
	// The first token lives long: the agent may take seconds to start.
	if _, err := admin.CoreV1().Secrets(ns).Create(ctx, next(time.Hour), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	createNode(t, admin, "node-exp")
	kubeconfig, _, _, err := c.AgentKubeconfig(ctx, ns, "nodecreds", "node-exp")
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	addr := testsupport.FreeAddr(t)
	agent := startAgent(t, "--kubeconfig", kubeconfig, "--namespace", ns, "--node-name", "node-exp", "--host-root", root,
		"--metrics-addr", addr, "--log-level", "debug", "--expiry-warn-share", "0.5", "--expiry-warn-min", "1s")
	kubelet := filepath.Join(root, kubeletFile)
	reason := func() (string, corev1.ConditionStatus, string) {
		n, err := admin.CoreV1().Nodes().Get(ctx, "node-exp", metav1.GetOptions{})
		if err != nil {
			return "", "", ""
		}
		if cond := condition(n); cond != nil {
			return cond.Reason, cond.Status, cond.Message
		}
		return "", "", ""
	}
	waitReason := func(want string, status corev1.ConditionStatus, within time.Duration) string {
		t.Helper()
		var msg string
		testsupport.Eventually(t, within, "condition "+want, func() bool {
			r, s, m := reason()
			msg = m
			return r == want && s == status
		})
		return msg
	}
	testsupport.Eventually(t, 30*time.Second, "first sync", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return authIn(kubelet, ecrEndpoint) == testsupport.B64("AWS:"+tokens[0])
	})
	waitReason("Synced", corev1.ConditionTrue, 15*time.Second)

	// The generator refreshes every 2 s: the expiry stays 8–10 s ahead,
	// never within the warning margin (5 s).
	rotating, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-rotating.Done():
				return
			case <-tick.C:
				if err := rotateECR(rotating, admin, next(lifetime)); err != nil && rotating.Err() == nil {
					t.Errorf("rotating: %v", err)
				}
			}
		}
	}()
	deadline := time.Now().Add(9 * time.Second)
	for time.Now().Before(deadline) {
		if r, s, m := reason(); r != "Synced" || s != corev1.ConditionTrue {
			t.Errorf("condition while the token is refreshed: %s %s %s", r, s, m)
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	stop()
	<-done
	mu.Lock()
	final, finalToken := last, tokens[len(tokens)-1]
	mu.Unlock()
	testsupport.Eventually(t, 10*time.Second, "the last rotation applied", func() bool {
		return authIn(kubelet, ecrEndpoint) == testsupport.B64("AWS:"+finalToken)
	})
	expiresAt, err := time.Parse(time.RFC3339, final.Annotations["nodecreds.io/expires-at"])
	if err != nil {
		t.Fatal(err)
	}
	series := fmt.Sprintf(`{registry=%q,secret="%s/%s"}`, ecrEndpoint, ns, secretName)
	if got := metricValue(t, addr, "nodecreds_credentials_expiry_timestamp_seconds"+series); got != float64(expiresAt.Unix()) {
		t.Errorf("expiry metric %v, want %d", got, expiresAt.Unix())
	}
	// The annotation has whole seconds: the lifetime seen is 9–10 s.
	if got := metricValue(t, addr, "nodecreds_credentials_lifetime_seconds"+series); got < 8 || got > lifetime.Seconds() {
		t.Errorf("lifetime metric %v, want about %v", got, lifetime.Seconds())
	}

	// No more refreshes: the agent turns the condition by itself.
	msg := waitReason("CredentialsExpiring", corev1.ConditionTrue, time.Until(expiresAt))
	if !strings.Contains(msg, ns+"/"+secretName) || !strings.Contains(msg, ecrEndpoint) {
		t.Errorf("CredentialsExpiring message %q does not name the Secret and the registry", msg)
	}
	if _, stderr, code := status(t, c, "--wait", "--timeout", "20s"); code != 0 {
		t.Errorf("status --wait while the credentials only expire soon: exit %d: %s", code, stderr)
	}
	msg = waitReason("CredentialsExpired", corev1.ConditionFalse, time.Until(expiresAt)+10*time.Second)
	for _, want := range []string{ns + "/" + secretName, ecrEndpoint, expiresAt.UTC().Format(time.RFC3339)} {
		if !strings.Contains(msg, want) {
			t.Errorf("CredentialsExpired message %q does not name %q", msg, want)
		}
	}
	st, stderr, code := status(t, c, "--wait", "--timeout", "3s")
	if code != 1 || !strings.Contains(stderr, "CredentialsExpired") || st.InSync {
		t.Errorf("status --wait after the expiry: exit %d, in sync %v, stderr %q; want 1 naming CredentialsExpired", code, st.InSync, stderr)
	}
	table, _, _ := run(t, "status", "--kubeconfig", c.Kubeconfig, "--namespace", ns)
	if !strings.Contains(table, ns+"/"+secretName+" at "+expiresAt.UTC().Format(time.RFC3339)+" (expired)") {
		t.Errorf("status does not print the expiry:\n%s", table)
	}
	jsonOut, _, _ := run(t, "status", "--kubeconfig", c.Kubeconfig, "--namespace", ns, "-o", "json")
	if !strings.Contains(jsonOut, `"left": "expired"`) {
		t.Errorf("status -o json does not say the expiry passed:\n%s", jsonOut)
	}

	// A refresh with a later expiry clears it at once.
	later := next(time.Hour)
	start := time.Now()
	if err := rotateECR(ctx, admin, later); err != nil {
		t.Fatal(err)
	}
	took := testsupport.Eventually(t, 5*time.Second, "Synced after a refresh", func() bool {
		r, s, _ := reason()
		return r == "Synced" && s == corev1.ConditionTrue
	})
	t.Logf("refresh to condition Synced: %s (since the update returned: %s)", took, time.Since(start))
	laterAt, _ := time.Parse(time.RFC3339, later.Annotations["nodecreds.io/expires-at"])
	if got := metricValue(t, addr, "nodecreds_credentials_expiry_timestamp_seconds"+series); got != float64(laterAt.Unix()) {
		t.Errorf("expiry metric after the refresh %v, want %d", got, laterAt.Unix())
	}
	if _, stderr, code := status(t, c, "--wait", "--timeout", "20s"); code != 0 {
		t.Errorf("status --wait after the refresh: exit %d: %s", code, stderr)
	}

	events, err := admin.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=node-exp"})
	if err != nil {
		t.Fatal(err)
	}
	reasons := map[string]string{}
	var eventText strings.Builder
	for _, e := range events.Items {
		reasons[e.Reason] = e.Type
		eventText.WriteString(e.Message + "\n")
	}
	for _, want := range []string{"CredentialsExpiring", "CredentialsExpired"} {
		if reasons[want] != corev1.EventTypeWarning {
			t.Errorf("no Warning Event %s on the Node; have %v", want, reasons)
		}
	}
	metrics := httpBody(t, "http://"+addr+"/metrics")
	if code := agent.stop(t); code != 0 {
		t.Errorf("agent exit code %d after SIGTERM", code)
	}
	_, _, condMsg := reason()
	leakCheck := strings.Join([]string{agent.logs.String(), eventText.String(), condMsg, msg, metrics, table, jsonOut, stderr}, "\n")
	mu.Lock()
	defer mu.Unlock()
	var secrets []string
	for _, tok := range tokens {
		secrets = append(secrets, tok, testsupport.B64("AWS:"+tok))
	}
	assertNoSecrets(t, "logs, events, condition, metrics, status", leakCheck, secrets...)
}

// metricValue reads one series' value from the agent's /metrics (NaN when
// absent).
func metricValue(t *testing.T, addr, series string) float64 {
	t.Helper()
	for line := range strings.SplitSeq(httpBody(t, "http://"+addr+"/metrics"), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err != nil {
				t.Fatalf("metric %s: %v", series, err)
			}
			return f
		}
	}
	return math.NaN()
}
