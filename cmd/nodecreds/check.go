package main

import (
	"context"
	"encoding/json"
	"io"

	"github.com/spf13/cobra"

	"github.com/nodecreds/nodecreds/internal/check"
	"github.com/nodecreds/nodecreds/internal/config"
)

// checkLong is check's help.
const checkLong = `Resolve credentials exactly as the kubelet does (the first config.json that
parses in its search order, then its key matching) for each --image and
--registry. With --probe, also log in to each registry's /v2/ with the
credentials found (basic and bearer-token flows) and report the registry's
answer. Exit 0 when all have credentials (and every login succeeded), 1
otherwise, 2 on bad usage. Usernames are shown; passwords and auth strings
never are.

With --runtime containerd, also say what containerd itself would send for
each image (and with --sandbox its sandbox image, which the kubelet never
pulls): the hosts.toml it reads (config_path, its imports followed, the
folder spellings host_port_, host:port and _default), each host it tries
in order (mirrors, then the server) with whether an Authorization header
is there, a Basic one's username and whether nodecreds wrote it, and what
in containerd's configuration or release keeps it from using the headers,
with the fix. With --probe, each host's challenge is asked for without
credentials. Header values are never shown.

With --service-account NAMESPACE/NAME, say instead what the plugin's
service-account mode (the kubelet's nodecreds-sa provider) answers for each
--image pulled by that ServiceAccount's Pods: the Secrets its
nodecreds.io/pull-secret annotation names, in order, are read with your
kubeconfig (never with a token), and the API server is asked whether the
ServiceAccount itself may get each one (a SubjectAccessReview), since the
plugin reads them with the Pod's token: one it may not get is SecretForbidden
even when you can read it. Per image: the reason (pullsecret's: Answered,
NoAnnotation, SecretNotFound, SecretForbidden, SecretMalformed, NoEntry, ...;
or Unknown when you may not read a Secret the answer turns on), the Secret
that answers, its entry and username. Without the annotation the kubelet does
not run the plugin and the node-wide answer applies: reason NoAnnotation, exit
1. When you may not create SubjectAccessReviews, the ServiceAccount's access
is "not checked" and does not fail the check. The node's files are not read,
so flags about them (--host-root, --registry, --probe, --runtime, ...) are
refused. Exit 0 when the plugin answers for every image, 1 otherwise, 2 on bad
usage:
  nodecreds check --service-account team-a/puller --image registry.example.com/team-a/app:v1

Use it as a node bootstrap gate or an init step:
  nodecreds check --image registry.example.com/team/app:v1 --probe || exit 1`

func newCheckCmd(stdout io.Writer) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check",
		Short: "Say whether this node can pull the given images, as the kubelet would resolve credentials",
		Long:  checkLong,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.LoadCheck(cmd.Flags())
			if err != nil {
				return err
			}
			if cfg.ServiceAccount != "" {
				return checkServiceAccount(cmd, stdout, cfg)
			}
			opts := check.Options{
				HostRoot:       cfg.HostRoot,
				KubeletRootDir: cfg.KubeletRootDir,
				Images:         cfg.Images,
				Registries:     cfg.Registries,
			}
			if cfg.Probe {
				opts.Prober = check.RegistryProber{Timeout: cfg.Timeout}
			}
			if cfg.Runtime != "" {
				opts.Runtime = runtimeOptions(cfg)
			}
			return writeReport(stdout, cfg.Output, check.Run(cmd.Context(), opts))
		},
	}
	config.CheckFlags(cmd.Flags())
	return cmd
}

// checkServiceAccount is check --service-account: what the plugin's
// service-account mode answers, read through the API with the caller's
// kubeconfig.
func checkServiceAccount(cmd *cobra.Command, stdout io.Writer, cfg config.Check) error {
	routeKlog(newLogger(cfg.Log, cmd.ErrOrStderr()))
	api, err := newServiceAccountAPI(kubeTarget{Kubeconfig: cfg.Kubeconfig, Context: cfg.Context})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(cmd.Context(), cfg.Timeout)
	defer cancel()
	rep, err := check.RunServiceAccount(ctx, api, cfg.SANamespace, cfg.SAName, cfg.Images)
	if err != nil {
		return err
	}
	return writeReport(stdout, cfg.Output, rep)
}

// writeReport prints rep as table or JSON; errFailed when it is not OK.
func writeReport(stdout io.Writer, output string, rep check.Report) error {
	var err error
	if output == "json" {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		err = enc.Encode(rep)
	} else {
		err = rep.WriteTable(stdout)
	}
	if err != nil {
		return err
	}
	if !rep.OK {
		return errFailed
	}
	return nil
}

// runtimeOptions are check's runtime settings.
func runtimeOptions(cfg config.Check) *check.RuntimeOptions {
	ro := &check.RuntimeOptions{
		CertsDir:   cfg.ContainerdCertsDir,
		ConfigFile: cfg.ContainerdConfig,
		StateDir:   cfg.StateDir,
		Version:    cfg.RuntimeVersion,
		Sandbox:    cfg.Sandbox,
	}
	if cfg.Probe {
		ro.Challenger = check.RegistryProber{Timeout: cfg.Timeout}
	}
	return ro
}
