// Validates custom resources against the kubernetes-models schemas.
// usage: node validate.mjs objects.json   (a JSON list of Kubernetes objects)
import { readFileSync } from "node:fs";
import { ScaledObject } from "@kubernetes-models/keda/keda.sh/v1alpha1";
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";

const models = {
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
};
let failed = 0;
for (const obj of JSON.parse(readFileSync(process.argv[2], "utf8"))) {
  const key = `${obj.apiVersion}/${obj.kind}`;
  const Model = models[key];
  if (!Model) {
    console.log(`NO VALIDATOR ${key}`);
    failed++;
    continue;
  }
  try {
    new Model(obj).validate();
    console.log(`valid ${key} ${obj.metadata.name}`);
  } catch (err) {
    console.log(`INVALID ${key} ${obj.metadata.name}: ${err.message}`);
    failed++;
  }
}
process.exit(failed ? 1 : 0);
