import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import { DatastoreService } from "../../gen/shaker/datastore/v1/datastore_pb.js";
import type { ServiceDeps } from "../shared/deps.js";

const notYet = () => {
  throw new ConnectError("the Datastore is not available in this build yet", Code.Unimplemented);
};

/** createDatastoreService builds the Datastore's handlers. */
export function createDatastoreService(_deps: ServiceDeps): { impl: ServiceImpl<typeof DatastoreService>; close(): Promise<void> } {
  return {
    impl: {
      createStore: notYet,
      listStores: notYet,
      deleteStore: notYet,
      upsertRecords: notYet,
      upsertRecordsStream: notYet,
      getRecords: notYet,
      deleteRecords: notYet,
      search: notYet,
    },
    async close() {},
  };
}
