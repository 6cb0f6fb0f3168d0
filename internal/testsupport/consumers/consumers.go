// Package consumers decodes credential documents the way the programs that
// read them do, for tests to compare nodecreds' reading with: the kubelet
// (its struct shapes and decoding, copied from
// k8s.io/kubernetes/pkg/credentialprovider v1.37.2, config.go, which
// test/consumers checks against the real package) and the docker CLI (its
// own configfile package).
package consumers

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"

	"github.com/docker/cli/cli/config/configfile"
	"github.com/docker/cli/cli/config/types"
)

// KubeletConfigJSON is credentialprovider.DockerConfigJSON.
type KubeletConfigJSON struct {
	Auths       KubeletConfig     `json:"auths"`
	HTTPHeaders map[string]string `json:"HttpHeaders,omitempty"`
}

// KubeletConfig is credentialprovider.DockerConfig: a .dockercfg, and the
// auths of a config.json.
type KubeletConfig map[string]KubeletEntry

// KubeletEntry is credentialprovider.DockerConfigEntry without Provider.
type KubeletEntry struct {
	Username string
	Password string
	Email    string
}

// kubeletEntryWithAuth is credentialprovider.dockerConfigEntryWithAuth.
type kubeletEntryWithAuth struct {
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	Email    string `json:"email,omitempty"`
	Auth     string `json:"auth,omitempty"`
}

// UnmarshalJSON is credentialprovider.DockerConfigEntry.UnmarshalJSON.
func (ident *KubeletEntry) UnmarshalJSON(data []byte) error {
	var tmp kubeletEntryWithAuth
	err := json.Unmarshal(data, &tmp)
	if err != nil {
		return err
	}
	ident.Username = tmp.Username
	ident.Password = tmp.Password
	ident.Email = tmp.Email
	if len(tmp.Auth) == 0 {
		return nil
	}
	ident.Username, ident.Password, err = decodeKubeletAuth(tmp.Auth)
	return err
}

// decodeKubeletAuth is credentialprovider.decodeDockerConfigFieldAuth.
func decodeKubeletAuth(field string) (username, password string, err error) {
	var decoded []byte
	if strings.HasSuffix(strings.TrimSpace(field), "=") {
		decoded, err = base64.StdEncoding.DecodeString(field)
	} else {
		decoded, err = base64.RawStdEncoding.DecodeString(field)
	}
	if err != nil {
		return
	}
	parts := strings.SplitN(string(decoded), ":", 2)
	if len(parts) != 2 {
		err = errors.New("unable to parse auth field, must be formatted as base64(username:password)")
		return
	}
	return parts[0], parts[1], nil
}

// Kubelet decodes a config.json as the kubelet reads a node file
// (readDockerConfigJSONFileFromBytes) and a dockerconfigjson Secret
// (credentialprovider/secrets.MakeDockerKeyring): one json.Unmarshal.
func Kubelet(data []byte) (KubeletConfigJSON, error) {
	var cfg KubeletConfigJSON
	err := json.Unmarshal(data, &cfg)
	return cfg, err
}

// KubeletLegacy decodes a .dockercfg (a dockercfg Secret) as the kubelet
// does.
func KubeletLegacy(data []byte) (KubeletConfig, error) {
	var cfg KubeletConfig
	err := json.Unmarshal(data, &cfg)
	return cfg, err
}

// DockerCLI loads a config.json with the docker CLI's own code
// (configfile.ConfigFile.LoadFromReader: json.Decoder, first value only,
// then every auth decoded).
func DockerCLI(data []byte) (*configfile.ConfigFile, error) {
	cfg := configfile.New("config.json")
	err := cfg.LoadFromReader(bytes.NewReader(data))
	return cfg, err
}

// DockerCLIEntries decodes the auths of a config.json, or a .dockercfg when
// legacy, into the docker CLI's entry type without its post-processing:
// which fields it reads (identitytoken, registrytoken) and how.
func DockerCLIEntries(data []byte, legacy bool) (map[string]types.AuthConfig, error) {
	if legacy {
		var m map[string]types.AuthConfig
		err := json.Unmarshal(data, &m)
		return m, err
	}
	var cfg struct {
		Auths map[string]types.AuthConfig `json:"auths"`
	}
	err := json.Unmarshal(data, &cfg)
	return cfg.Auths, err
}
