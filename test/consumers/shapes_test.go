package consumers

import (
	"encoding/json"
	"reflect"
	"testing"

	"k8s.io/kubernetes/pkg/credentialprovider"

	"github.com/nodecreds/nodecreds/internal/testsupport/consumers"
)

// FuzzKubeletShapes: internal/testsupport/consumers' copy of the kubelet's
// struct shapes, which nodecreds' fuzzers (internal/nodefile FuzzDocument,
// internal/dockercfg FuzzParse) take as the kubelet, decodes every input as
// the kubelet's own types do: same verdict, same entries.
func FuzzKubeletShapes(f *testing.F) {
	for _, s := range []string{
		``, `null`, `{}`, `{"auths":null}`, `{"auths":{"a":null}}`, `{"auths":{"a":1,"a":{}}}`,
		`{"auths":{"foreign.test":{"auth":"Zjpw"}},"auths":{"other.test":{"auth":"bzpw"}}}`,
		`{"Auths":{"a":{"auth":"dTpw"}},"auths":{"b":{"auth":"dTpw"}},"AUTHS":{"a":{"auth":"eDp5"}}}`,
		"{\"auth\u017f\":{\"a\":{}},\"\\u0061uths\":{\"b\":null}}",
		`{"auths":{"a":{"auth":"dTpw","Auth":"eDp5","auth":null,"Username":"u","PASSWORD":"p","email":"e"}},"HttpHeaders":{"x":"y"}}`,
		`{"auths":{"a":{"auth":" dTpw"}}}`, `{"auths":{"a":{"auth":"dTo"}}}`, `{"auths":{"a":{"auth":"!"}}}`,
		`{"auths":{"a":{"auth":"dTpw"}}} trailing`, `{"HttpHeaders":5}`,
		`{"r.io":{"auth":"dTpw"},"r.io":{"username":"u"}}`,
	} {
		f.Add([]byte(s), false)
		f.Add([]byte(s), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, legacy bool) {
		if legacy {
			var kubelets credentialprovider.DockerConfig
			rerr := json.Unmarshal(data, &kubelets)
			ours, err := consumers.KubeletLegacy(data)
			if (err != nil) != (rerr != nil) {
				t.Fatalf("%q: the copy says %v, the kubelet %v", data, err, rerr)
			}
			if err == nil && !sameConfig(ours, kubelets) {
				t.Fatalf("%q: the copy reads %+v, the kubelet %+v", data, ours, kubelets)
			}
			return
		}
		var kubelets credentialprovider.DockerConfigJSON
		rerr := json.Unmarshal(data, &kubelets)
		ours, err := consumers.Kubelet(data)
		if (err != nil) != (rerr != nil) {
			t.Fatalf("%q: the copy says %v, the kubelet %v", data, err, rerr)
		}
		if err == nil && (!sameConfig(ours.Auths, kubelets.Auths) || !reflect.DeepEqual(ours.HTTPHeaders, kubelets.HTTPHeaders)) {
			t.Fatalf("%q: the copy reads %+v, the kubelet %+v", data, ours, kubelets)
		}
	})
}

func sameConfig(ours consumers.KubeletConfig, kubelets credentialprovider.DockerConfig) bool {
	if len(ours) != len(kubelets) || (ours == nil) != (kubelets == nil) {
		return false
	}
	for k, e := range ours {
		r, ok := kubelets[k]
		if !ok || e.Username != r.Username || e.Password != r.Password || e.Email != r.Email {
			return false
		}
	}
	return true
}
